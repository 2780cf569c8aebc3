"""Installs the repository's top-level folders under one import namespace, `steerchat`.

The folders stay where they are (engine/, tui/, models/ at the top level); the mapping below
makes them `steerchat.engine`, `steerchat.tui` and `steerchat.models`, for wheel and editable
installs alike, so nothing is installed as a top-level `engine` or `models`.
"""

from setuptools import find_packages, setup

ROOTS = {
    "steerchat": "steerchat",
    "steerchat.engine": "engine",
    "steerchat.tui": "tui",
    "steerchat.models": "models",
}

packages: list[str] = []
for package, folder in ROOTS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder) if f"{package}.{sub}" not in ROOTS]

setup(packages=packages, package_dir=ROOTS)
