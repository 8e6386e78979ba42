"""Compile-time data code (needs torch where noted); importing the package loads nothing heavy."""
