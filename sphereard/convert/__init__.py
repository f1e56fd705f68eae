"""Import model weights trained elsewhere into `sphereard.export` folders.

`python -m sphereard.convert official ...` converts the authors' released SphereAR checkpoints
(github guolinke/SphereAR); facts and citations are in docs/official-checkpoints.md.
"""
