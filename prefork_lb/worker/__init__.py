"""The worker: a gevent server that feeds HTTP requests to a WSGI app."""
