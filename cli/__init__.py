"""Command-line front ends: parse, call corelib, format. Nothing else lives here."""
