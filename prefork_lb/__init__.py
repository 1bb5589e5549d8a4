"""prefork_lb: a prefork WSGI server and load balancer."""

__version__ = "0.1.0"
