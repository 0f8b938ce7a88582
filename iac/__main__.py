"""The Pulumi program (`main: iac/` in Pulumi.yaml): it only composes.

Pulumi runs this file as a script; nothing imports it. Stack config is read in iac/pulumi_config.py, the
resources are declared in iac/pulumi_resources.py, and their provider (iac/pulumi_provider.py) moves nodes
with the same code as `strata apply`. See docs/pulumi.md.
"""

import pulumi

from iac.pulumi_config import read_config
from iac.pulumi_resources import build_site

config = read_config()
site = build_site(config)

pulumi.export("site", site.site_name)
pulumi.export("state_dir", site.state_dir)
pulumi.export("vclusters", {
    name: {"members": vc.members, "slurm_conf": vc.slurm_conf, "image": vc.image}
    for name, vc in site.vclusters.items()
})
pulumi.export("free_pool", site.free_pool)
