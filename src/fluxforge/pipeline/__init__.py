"""fluxforge.pipeline"""
