"""Fixtures of the retrieval tests: a small synthetic shop (see retrieval_shop.py)."""

import pytest
from retrieval_shop import SyntheticShop, make_shop, split_shop


@pytest.fixture(scope="session")
def shop() -> SyntheticShop:
    return make_shop(0)


@pytest.fixture(scope="session")
def shop_split(shop):
    return split_shop(shop)
