"""Packaging is declared in pyproject.toml; this file adds only what pyproject cannot say with package
discovery on: the top-level ``conf/`` directory (the user's layout) ships as the package ``prefopt.conf``,
so that a non-editable install finds its configs (``prefopt.config.CONF_DIR``)."""

from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["prefopt*", "hydra_plugins*"]) + ["prefopt.conf"],
    package_dir={"prefopt.conf": "conf"},
)
