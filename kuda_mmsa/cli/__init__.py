"""Commands (the top layer): train, pretrain, explain, ablate, config, ...; ``main.main`` is
the entry point of ``kuda-mmsa`` and ``python -m kuda_mmsa``. ``hook`` is the start-up hook
that makes ``python -m MMSA`` run it; importing this package is cheap (the hook imports it).
"""
