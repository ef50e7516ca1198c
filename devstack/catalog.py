"""What a registry's traffic is made of: repositories and their tags, the identities that pull and the clients
they pull with. Built once from a fixed seed, so every run of the generator sees the same organisation; which
of them a run uses, and when, comes from the run's own seed (``devstack.traffic``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache

from devstack.oidc import DEFAULT_GROUP

REGISTRY = "chainguard.edu"
# (image, versions its tags name), most pulled first: pulls follow a long tail (weights ~ 1 / rank).
IMAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python", ("3.13", "3.12", "3.11")),
    ("node", ("23", "22", "20")),
    ("go", ("1.23", "1.22")),
    ("nginx", ("1.27", "1.26")),
    ("static", ()),
    ("jdk", ("21", "17")),
    ("jre", ("21", "17")),
    ("postgres", ("17", "16", "15")),
    ("redis", ("7.4", "7.2")),
    ("wolfi-base", ()),
    ("busybox", ("1.37",)),
    ("curl", ("8.11",)),
    ("git", ("2.47",)),
    ("kubectl", ("1.31", "1.30")),
    ("helm", ("3.16",)),
    ("python-fips", ("3.12",)),
    ("node-fips", ("22",)),
    ("glibc-dynamic", ()),
    ("ruby", ("3.3",)),
    ("php", ("8.3", "8.2")),
    ("dotnet-runtime", ("8.0",)),
    ("aspnet-runtime", ("8.0",)),
    ("rust", ("1.83",)),
    ("maven", ("3.9",)),
    ("gradle", ("8.11",)),
    ("mariadb", ("11.4",)),
    ("mysql", ("8.4",)),
    ("rabbitmq", ("4.0",)),
    ("kafka", ("3.9",)),
    ("prometheus", ("3.0",)),
    ("grafana", ("11.4",)),
    ("cert-manager-controller", ("1.16",)),
    ("ingress-nginx-controller", ("1.12",)),
    ("argocd", ("2.13",)),
    ("vault", ("1.18",)),
    ("istio-proxy", ("1.24",)),
    ("keycloak", ("26.0",)),
    ("opentelemetry-collector-contrib", ("0.115",)),
)
PLATFORMS = ("linux/amd64", "linux/arm64")
# Most requests come without a resolved location.
LOCATIONS = ("", "", "", "ColumbusOHUS", "AshburnVAUS", "PortlandORUS", "FrankfurtDE", "DublinIE", "TokyoJP")
CLIENTS = (
    "docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.8.0-49-generic os/linux arch/amd64"
    " UpstreamClient(Docker-Client/27.3.1 \\(linux\\))",
    "docker/26.1.5 go/go1.21.12 git-commit/411e817 kernel/6.6.32-linuxkit os/linux arch/arm64"
    " UpstreamClient(Docker-Client/26.1.4 \\(darwin\\))",
    "containerd/v2.0.2",
    "containerd/v1.7.24",
    "cri-o/1.31.3 go/go1.22.9 os/linux arch/amd64",
    "go-containerregistry/v0.20.2",
    "crane/v0.20.2 go-containerregistry/v0.20.2",
    "skopeo/1.17.0",
    "buildkit/v0.18",
    "kaniko/v1.23.2",
    "Go-http-client/1.1",
    "podman/5.3.1",
)
POLICIES = (("1f2e3d4c", "require-signed-images"), ("7a6b5c4d", "no-critical-cves"))


@dataclass(frozen=True)
class Repository:
    name: str
    repo_id: str
    tags: tuple[str, ...]  # what clients ask for; "" is a pull by digest
    layers: int  # blobs in one platform's image, its config included


@dataclass(frozen=True)
class Actor:
    """An identity that pulls: the claims it assumed, where it pulls from, with which clients."""

    subject: str
    act: dict[str, str]
    clients: tuple[str, ...]
    addresses: tuple[str, ...]
    location: str
    policies: bool  # its pulls are judged by the organisation's policies


@dataclass(frozen=True)
class Catalog:
    group: str
    repositories: tuple[Repository, ...]
    repository_weights: tuple[float, ...]
    actors: tuple[Actor, ...]
    actor_weights: tuple[float, ...]


def uidp(group: str, *parts: str) -> str:
    """A stable Chainguard UIDP under ``group`` for what ``parts`` name."""
    return f"{group}/{hashlib.sha256('/'.join(parts).encode()).hexdigest()[:16]}"


def digest(*parts: str) -> str:
    """A stable ``sha256:`` digest for the manifest or blob ``parts`` name."""
    return "sha256:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


@cache
def catalog(group: str = DEFAULT_GROUP) -> Catalog:
    rng = random.Random(11)  # fixed: the same organisation in every run
    repositories = tuple(
        Repository(
            name=f"{REGISTRY}/{image}",
            repo_id=uidp(group, "repo", image),
            tags=("latest", "latest-dev", *versions, *(f"{v}-dev" for v in versions[:1]), ""),
            layers=rng.randint(2, 7),
        )
        for image, versions in IMAGES
    )
    actors = tuple(_actor(group, index, rng) for index in range(48))
    return Catalog(
        group=group,
        repositories=repositories,
        repository_weights=tuple(1 / rank for rank in range(1, len(repositories) + 1)),
        actors=actors,
        actor_weights=tuple(1 / rank**0.8 for rank in range(1, len(actors) + 1)),
    )


def _actor(group: str, index: int, rng: random.Random) -> Actor:
    kind = index % 4
    if kind == 0:  # CI: GitHub Actions workflows assuming an identity
        app = f"service-{index:02d}"
        act = {
            "iss": "https://token.actions.githubusercontent.com",
            "sub": f"repo:example-org/{app}:ref:refs/heads/main",
            "aud": "https://issuer.enforce.dev",
            "job_workflow_ref": f"example-org/{app}/.github/workflows/build.yaml@refs/heads/main",
        }
        clients = ("buildkit/v0.18", CLIENTS[0])
    elif kind == 1:  # clusters: nodes pulling with a pull token
        act = {"iss": "https://issuer.enforce.dev", "sub": uidp(group, "pull-token", str(index))}
        clients = tuple(rng.sample(CLIENTS[2:5], 2))
    elif kind == 2:  # workloads on AWS
        account = f"{rng.randrange(10**11, 10**12)}"
        role = f"arn:aws:sts::{account}:assumed-role/registry-puller-{index}/i-{rng.getrandbits(64):016x}"
        act = {"iss": "https://sts.amazonaws.com", "sub": role, "aws-acct": account, "aws-arn": role}
        clients = tuple(rng.sample(CLIENTS[2:8], 2))
    else:  # people at their laptops
        email = f"dev{index}@example.com"
        act = {"iss": "https://accounts.google.com", "sub": f"{rng.getrandbits(64)}", "email": email}
        clients = (CLIENTS[1], rng.choice(CLIENTS[5:]))
    network = rng.choice(("192.0.2", "198.51.100", "203.0.113"))
    addresses = tuple(f"{network}.{rng.randint(1, 254)}" for _ in range(rng.randint(1, 3)))
    if index % 7 == 3:
        addresses += (f"2001:db8:{index:x}::{rng.randint(1, 0xFFFF):x}",)
    return Actor(
        subject=uidp(group, "identity", str(index)),
        act=act,
        clients=clients,
        addresses=addresses,
        location=rng.choice(LOCATIONS),
        policies=index % 3 == 0,
    )
