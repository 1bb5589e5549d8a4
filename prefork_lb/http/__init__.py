"""HTTP/1.x parsing, validation and response writing. Pure code: no sockets in this package."""
