"""fluxforge.track"""
