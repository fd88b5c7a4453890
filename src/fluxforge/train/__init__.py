"""fluxforge.train"""
