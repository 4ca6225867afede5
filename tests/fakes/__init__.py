"""Test doubles and helpers shared by test modules.

A test module never imports another test module (tests/unit/test_test_layout.py
holds that): what two of them share lives here, one module per thing faked or
helped, and the pytest fixtures built on it live in a conftest.py.
"""
