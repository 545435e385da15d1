"""golfjax: a JAX-native, functional RL research codebase for language models."""

import setuptools

# Core: what `import golfjax` and its libraries really need.
INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.11",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.90",
    "numpy>=1.26",
    "sentencepiece>=0.2",
    "tokenizers>=0.21",
    "jinja2>=3.1",
    "safetensors>=0.4",
    # Prompt datasets (golfjax/data/): TFDS builds and reads ArrayRecord files
    # without TensorFlow (its epath needs importlib_resources); grain batches them.
    "tensorflow-datasets>=4.9.8",
    "importlib_resources>=6",
    "array_record>=0.8",
    "grain>=0.2.18",
    "ml_collections>=1.0",
    "absl-py>=2.1",
    "tensorboardX>=2.6",
    "math-verify>=0.9",
]

EXTRAS_REQUIRE = {
    # Everything the test suite imports, including the PyTorch CPU reference
    # (`torch==2.13.0` is the CPU build; other specs pull CUDA wheels).
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "torch==2.13.0",
        "transformers>=4.51",
        "matplotlib>=3.8",  # golfjax.plotting (make demo, benchmarks)
        # tests/notebook_test.py runs notebooks/golfjax_quickstart.ipynb.
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
    ],
    # `python -m golfjax.aot`: compiling for a TPU slice from any host needs
    # libtpu, which jax[tpu] pins to the installed JAX's version.
    "tpu-aot": ["jax[tpu]"],
    # Peers the benchmarks measure golfjax against in the same run.
    "bench": [
        "google-tunix==0.1.7",
        "torch==2.13.0",
        "transformers>=4.51",
        "matplotlib>=3.8",
    ],
    # XManager launch (launch/xm_launch.py). Pinned so that pip resolves it
    # without backtracking: unpinned, google-cloud-bigquery (via
    # google-cloud-aiplatform) and kubernetes disagree on python-dateutil and
    # pip walks back through every bigquery release for many minutes.
    # xmanager needs protobuf<7.
    "launch": [
        "xmanager==0.8.5.post1",
        "protobuf>=6.31,<7",
        "google-cloud-bigquery==3.47.0",
        "kubernetes==37.0.1",
    ],
}

setuptools.setup(
    name="golfjax",
    version="0.1.0",
    description=(
        "JAX/TPU-native functional RL for language models: GOLF and VESPO."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["golfjax", "golfjax.*"]),
    package_data={"golfjax.data": ["testdata/*.jsonl", "base_policies/*/*"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "License :: OSI Approved :: Apache Software License",
    ],
)
