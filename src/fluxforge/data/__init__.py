"""fluxforge.data"""
