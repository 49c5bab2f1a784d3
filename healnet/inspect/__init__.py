"""healnet.inspect"""
