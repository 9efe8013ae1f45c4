"""Real calls to a datastack node through the client openapi-python-client generated from
its /openapi.json (run by .ci/interop). Every call relies on the document: paths,
methods, bodies, response models, and the x-datastack-scope default of each operation
(no call here names a scope)."""

import os
import sys

from datastack_client import AuthenticatedClient, Client
from datastack_client.api.audit import list_audit_events, verify_audit_chain
from datastack_client.api.gateway import get_jwks
from datastack_client.api.health import get_health, get_readiness
from datastack_client.api.identity import get_me
from datastack_client.api.tokens import create_token, list_tokens, revoke_token
from datastack_client.api.users import create_user, get_user, list_users
from datastack_client.models import CreateTokenRequest, CreateUserRequest, ErrorBody

URL = os.environ["DATASTACK_URL"]
admin = AuthenticatedClient(base_url=URL, token=os.environ["DATASTACK_TOKEN"])


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


anonymous = Client(base_url=URL)
check(get_health.sync_detailed(client=anonymous).status_code == 200, "GET /healthz")
check(get_readiness.sync(client=anonymous).status == "ready", "GET /readyz reports ready")

me = get_me.sync(client=admin)
check(me.principal.role == "admin", "GET /api/v1/me parses into MeResponse")

created = create_token.sync(client=admin, body=CreateTokenRequest(label="generated client", scopes=["read:users"]))
check(created.token.startswith("dapi"), "POST /api/v1/auth/tokens returns the secret once")
reader = AuthenticatedClient(base_url=URL, token=created.token)
check(get_me.sync(client=reader).credential.id == created.id, "the new token authenticates")

page = list_tokens.sync(client=admin)
check(any(t.id == created.id for t in page.items), "GET /api/v1/auth/tokens lists it (without its secret)")

user = create_user.sync(client=admin, body=CreateUserRequest(email="gen@example.com", name="Gen"))
check(get_user.sync(client=reader, id=user.id).email == "gen@example.com", "read:users reads a user")
check(any(u.id == user.id for u in list_users.sync(client=reader).items), "GET /api/v1/users")

# The reader's token holds read:users only: a write is refused with the error body.
refused = create_user.sync(client=reader, body=CreateUserRequest(email="no@example.com", name="No"))
check(isinstance(refused, ErrorBody) and refused.error.code == "FORBIDDEN", "a write without manage:users is 403")

check(revoke_token.sync_detailed(client=admin, id=created.id).status_code == 204, "DELETE revokes the token")
check(get_me.sync_detailed(client=reader).status_code == 401, "the revoked token is refused")

events = list_audit_events.sync(client=admin)
check(any(e.action == "tokens.revoke" for e in events.items), "the audit log shows the revocation")
check(verify_audit_chain.sync(client=admin).ok, "the audit chain verifies")

jwks = get_jwks.sync(client=anonymous)
check(jwks.keys[0].kty == "OKP" and jwks.keys[0].crv == "Ed25519", "the JWK set parses")
