"""The Pulumi resources of a site: one `Site` component, one `VCluster` component per vCluster, and one
`NodeMembership` per node.

    Site (strata:index:Site)
    ├── VCluster clariden, bristen, eiger, … (strata:index:VCluster)
    └── NodeMembership nid001 … nid008        (dynamic/strata:NodeMembership, input: vcluster)

A membership's parent is the site, not its vCluster: a URN is made of the parents' types and the
resource's name, so the URN of `nid006` stays the same when the site file moves it from clariden to
bristen, and Pulumi plans the move as an *update* of its `vcluster` input (never delete + create).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pulumi
from pulumi import dynamic

from vocab.layout import Layout
from iac.pulumi_config import StackConfig
from iac.pulumi_provider import FREE, NodeMembershipProvider
from vocab.site import Site, SiteError, load_site


@dataclass(frozen=True)
class NodeMembershipArgs:
    """Inputs of a membership; plain data only, since they travel to the provider's process."""

    node: str
    vcluster: str
    """Target vCluster; "" for the free pool."""
    site: str
    """Site name."""
    site_path: str
    """Absolute path of the site file (the provider reads vClusters, images and ports from it)."""
    state_dir: str
    """Absolute state dir (`$STRATA_STATE`)."""
    timeout: float
    """Seconds a move waits for the node's running jobs to end."""
    force: bool
    """Requeue the node's jobs instead of waiting."""


class NodeMembership(dynamic.Resource, module="strata", name="NodeMembership"):
    """One node's membership in a vCluster or the free pool; changing `vcluster` moves the node."""

    vcluster: pulumi.Output[str]
    """The vCluster the node is in ("" for the free pool)."""
    slurm_state: pulumi.Output[str]
    """The node's state in its vCluster after the move (idle, alloc, drained, …; `free`)."""

    def __init__(self, name: str, args: NodeMembershipArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(NodeMembershipProvider(), name, {**asdict(args), "slurm_state": None}, opts)


@dataclass(frozen=True)
class VClusterArgs:
    """What a vCluster component shows of its vCluster."""

    platform: str
    image: str
    slurm_conf: str
    """Path of its slurm.conf: `export SLURM_CONF=…` to use sinfo/sbatch on it."""
    controller_port: int
    members: pulumi.Input[list[str]]
    """Its nodes as the memberships report them after the update."""


class VClusterComponent(pulumi.ComponentResource):
    """One vCluster of the site."""

    def __init__(self, name: str, args: VClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("strata:index:VCluster", name, None, opts)
        self.platform = pulumi.Output.from_input(args.platform)
        self.image = pulumi.Output.from_input(args.image)
        self.slurm_conf = pulumi.Output.from_input(args.slurm_conf)
        self.controller_port = pulumi.Output.from_input(args.controller_port)
        self.members = pulumi.Output.from_input(args.members)
        self.register_outputs({
            "platform": self.platform, "image": self.image, "slurm_conf": self.slurm_conf,
            "controller_port": self.controller_port, "members": self.members,
        })


@dataclass(frozen=True)
class SiteArgs:
    """A loaded site and how to move its nodes."""

    site: Site
    state_dir: str
    timeout: float
    force: bool


class SiteComponent(pulumi.ComponentResource):
    """A site: its vClusters and the membership of each of its nodes."""

    def __init__(self, name: str, args: SiteArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("strata:index:Site", name, None, opts)
        site = args.site
        self.site_name = site.name
        self.state_dir = args.state_dir
        # parent=self (the site) for memberships too: see the module docstring
        self.memberships = {
            node: NodeMembership(
                node,
                NodeMembershipArgs(
                    node=node, vcluster=owner or FREE, site=site.name, site_path=str(site.path.resolve()),
                    state_dir=args.state_dir, timeout=args.timeout, force=args.force,
                ),
                pulumi.ResourceOptions(parent=self),
            )
            for node, owner in site.desired.items()
        }
        nodes = list(self.memberships)
        owners = pulumi.Output.all(*[m.vcluster for m in self.memberships.values()])
        layout = Layout.of(site, Path(args.state_dir))
        self.vclusters = {
            v: VClusterComponent(
                v,
                VClusterArgs(
                    platform=site.platform_of[v], image=site.image_of(v), slurm_conf=str(layout.slurm_conf(v)),
                    controller_port=layout.ctld_port(v),
                    members=owners.apply(lambda got, v=v: [n for n, o in zip(nodes, got) if o == v]),
                ),
                pulumi.ResourceOptions(parent=self),
            )
            for v in site.vclusters
        }
        self.free_pool = owners.apply(lambda got: [n for n, o in zip(nodes, got) if not o])
        self.register_outputs({
            "vclusters": {v: c.members for v, c in self.vclusters.items()},
            "free_pool": self.free_pool,
        })


def build_site(cfg: StackConfig) -> SiteComponent:
    """The whole program for one stack: load the site file and declare its resources."""
    try:
        site = load_site(cfg.site_path)
    except SiteError as e:
        raise pulumi.RunError(f"invalid site file (strata:site)\n{e}") from None
    return SiteComponent(
        site.name, SiteArgs(site=site, state_dir=str(cfg.state_dir), timeout=cfg.move_timeout, force=cfg.force)
    )
