"""
SRT (Secure Reliable Transport) ingest: sans-IO packet codec, the listener
side of the HSv5 caller-listener handshake and a receiver connection.
"""
