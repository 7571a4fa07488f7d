from tests.support.pki import other_key, pki, signer  # noqa: F401 - fixtures are registered by being imported here
