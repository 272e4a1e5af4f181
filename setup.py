from setuptools import setup

setup(
    name="tokengate",
    version="0.1.0",
    description="A streaming server on Twisted where every publish and play is gated by a one-time token",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[
        "tokengate",
        "tokengate.store",
        "tokengate.web",
        "tokengate.rtmp",
        "tokengate.media",
        "twisted.plugins",
    ],
    package_data={"tokengate.web": ["static/*"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "autobahn>=24.4",
        "treq>=24.9",
        "attrs>=23.1",
        "zope.interface>=6",
        "PyJWT>=2.8",
        "prometheus-client>=0.20",
        "txredisapi>=1.4.10",
    ],
    extras_require={
        "test": ["hypothesis>=6.100", "redis>=5"],
    },
)
