"""healnet.wsi"""
