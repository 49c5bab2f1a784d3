"""healnet.omics"""
