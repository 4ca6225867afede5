"""Glance v2 backend: ImageStore on python-glanceclient and keystoneauth1."""
