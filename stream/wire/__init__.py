"""Sans-IO wire formats shared by the daemon, the engine client and the tests.

Nothing in this package does I/O or imports aiohttp: it parses and builds
bytes and headers.  ``engine_client`` may import this package and nothing
else of ``stream``.
"""
