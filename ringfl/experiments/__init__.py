"""Topology experiments: grids of settings, their runs, result files, reports and plots."""
