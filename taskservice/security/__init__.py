"""Credentials: bcrypt password hashing off the event loop, and JWT access tokens."""
