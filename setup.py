from setuptools import find_packages, setup

import re

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

# One version, ockamtw.__version__ (read, not imported: the dependencies may
# not be installed yet).
with open("ockamtw/__init__.py", encoding="utf-8") as f:
    version = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)

setup(
    name="ockamtw",
    version=version,
    description="Ockam's routed messaging, relays and portals on Twisted, wire-compatible with Ockam 0.83",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["ockamtw", "ockamtw.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["ockam_plugin.py", "ockam_orchestrator_plugin.py", "ockam_endpoints.py"]},
    include_package_data=False,
    install_requires=[
        "twisted>=23.10,<27",
        "automat>=24.8",  # TypeMachineBuilder (the relay, channel and portal state machines)
        "zope.interface>=6.0,<9",
        "construct>=2.10.68,<2.11",
        "treq>=23.11,<27",
        "cryptography>=41,<51",
        "cbor2>=5.4,<7",
    ],
    extras_require={
        # Several Orchestrator instances on one PostgreSQL database (--db postgresql://...).
        "postgresql": ["psycopg[binary]>=3.1,<4"],
        "test": ["hypothesis>=6.80,<7", "psycopg[binary]>=3.1,<4"],
        "docs": ["sphinx>=7", "myst-parser>=2"],
    },
    entry_points={
        "console_scripts": [
            "ockam = ockamtw.cli.entry:main",
            "ockamtw-node = ockamtw.tap:run",
            "ockamtw-orchestrator = ockamtw.orchestrator.tap:run",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
