"""healnet.survival"""
