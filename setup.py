"""Packaging is declared in setup.cfg. This adds one thing setup.cfg cannot say beside ``packages = find:``: the
repository's top-level models/ folder ships inside the wheel as ``pyterrier_matroyshka/models`` (package data,
see ``[options.package_data]``), where :mod:`pyterrier_matroyshka.pretrained` finds the pretrained adapters."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["pyterrier_matroyshka", "pyterrier_matroyshka.*"]) + ["pyterrier_matroyshka.models"],
      package_dir={"pyterrier_matroyshka.models": "models"})
