"""Package data: kuda.yaml (hyper-parameters). This file makes the folder a regular
package so importlib.resources finds kuda_mmsa.configs in editable installs too."""
