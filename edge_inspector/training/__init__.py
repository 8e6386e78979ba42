"""Compile-time training code (needs torch where noted); importing the package loads nothing heavy."""
