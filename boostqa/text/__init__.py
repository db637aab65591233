"""Spark-free text kernels: plain functions over Python/numpy/pandas objects."""
