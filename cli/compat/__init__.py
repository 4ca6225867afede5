"""Thin front ends that keep the seed tools' verbs and flags."""
