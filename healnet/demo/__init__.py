"""healnet.demo"""
