"""The test suite: one folder per package, helpers imported by their full name."""
