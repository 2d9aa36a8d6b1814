"""The lowest layer: errors, settings (every environment variable is read here), the
state file, process control and the IPC channel. Imports no other layer.
"""
