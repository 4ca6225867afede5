"""Backends shipped with stowkit, each registered through a stevedore entry point."""
