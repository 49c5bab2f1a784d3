"""healnet.training"""
