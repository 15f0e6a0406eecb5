"""Real-kernel end-to-end harness: builds a Debian 12 image, boots it under qemu with the user data that the
example app synthesizes, and reads structured results back from the serial console.

Python orchestrates on the host (``image``, ``vm``, ``userdata``, ``scenarios``, ``storm``); shell runs only
inside the guest (``guest/``).
"""
