"""Image provisioning: resolve, fetch, build, cache and record image sets.

Knows nothing of labgrid or pytest; the plugin asks it for a directory of
ready files and a record of exactly what they are.
"""
