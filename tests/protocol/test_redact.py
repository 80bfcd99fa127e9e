"""The one masking function for credentials in URLs."""

from __future__ import annotations

import logging

import pytest

from protocol import mask_credentials


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:s3cret@example.com/r", "https://***@example.com/r"),
        ("fatal: 'https://ghp_tok@github.com/u/r/' x", "fatal: 'https://***@github.com/u/r/' x"),
        ("ssh://git:pw@github.com/a/b", "ssh://***@github.com/a/b"),
        # A login name is no secret; scp-style and plain text stay as they are.
        ("ssh://git@github.com/a/b", "ssh://git@github.com/a/b"),
        ("git@github.com:a/b", "git@github.com:a/b"),
        ("mail me@example.com", "mail me@example.com"),
        ("a http://u:p@h/x and HTTPS://t@h2/y", "a http://***@h/x and HTTPS://***@h2/y"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked
    assert mask_credentials(masked) == masked


@pytest.mark.timeout(10)
def test_the_controller_log_masks_them(caplog: pytest.LogCaptureFixture) -> None:
    from controller.cli.server import MaskCredentials

    logger = logging.getLogger("nodeferry.test.mask")
    logger.addFilter(MaskCredentials())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("cloning %s failed", "https://u:hunter2@h/x")
    assert "hunter2" not in caplog.text and "https://***@h/x" in caplog.text
