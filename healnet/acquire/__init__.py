"""healnet.acquire"""
