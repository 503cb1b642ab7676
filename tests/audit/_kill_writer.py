"""Child process of the durability test: prints ``ready PUBKEY`` (its signing key's public
half, hex), then appends forever, printing ``ack K INDEX`` after each append has returned
(i.e. was acknowledged as durable), until it is killed."""

from __future__ import annotations

import asyncio
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import AuditLog, GroupCommitter


def ack(k: int, index: int) -> None:
    sys.stdout.write(f"ack {k} {index}\n")
    sys.stdout.flush()


def direct(log: AuditLog) -> None:
    k = 0
    while True:
        if k % 3 == 0:
            ack(k, log.append({"w": k}))
            k += 1
        else:
            batch = [{"w": k + j} for j in range(5)]
            for j, index in enumerate(log.append_many(batch)):
                ack(k + j, index)
            k += 5


async def grouped(log: AuditLog) -> None:
    committer = GroupCommitter(log, max_batch=64, max_delay_ms=1.0)
    await committer.start()
    k = 0

    async def one(k: int) -> None:
        ack(k, await committer.submit({"w": k}))

    while True:
        tasks = [asyncio.create_task(one(k + j)) for j in range(16)]
        k += 16
        await asyncio.sleep(0)
        if len(asyncio.all_tasks()) > 256:
            await asyncio.gather(*tasks)


def main() -> None:
    url, schema, mode = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    key = Ed25519PrivateKey.generate()
    log = AuditLog.open(url, schema=schema, signing_key=key, checkpoint_every=50)
    # the public key goes to the parent through the pipe, not through the database
    sys.stdout.write(f"ready {key.public_key().public_bytes_raw().hex()}\n")
    sys.stdout.flush()
    if mode == "group":
        asyncio.run(grouped(log))
    else:
        direct(log)


if __name__ == "__main__":
    main()
