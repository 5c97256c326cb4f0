// A real OpenID Connect provider for tests (npm oidc-provider 9.x, installed into .venv/node by scripts/setup).
// Usage: node provider.mjs <port> <accounts.json> <client_id> <client_secret> <redirect_uri> [<post_logout_uri>]
// accounts.json maps a login name to its claims ({"sub", "email", "email_verified", "org", "carnet_role"});
// it is read again at every lookup, so a test can change a role "at the provider" between sign-ins.
// Sign-in uses the provider's dev interactions (a login form, then a consent form). PKCE is required of the
// client (as a careful deployment would configure it), and RP-initiated logout (end_session_endpoint) may
// send the browser back to <post_logout_uri> (default: the Hub's /hub/login next to the callback).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const [port, accountsFile, clientId, clientSecret, redirectUri, postLogoutArg] = process.argv.slice(2);
const postLogoutUri = postLogoutArg || redirectUri.replace(/\/oauth_callback$/, '/login');
const nodeDir = process.env.CARNET_NODE_DIR
  || join(dirname(fileURLToPath(import.meta.url)), '..', '..', '.venv', 'node');
const require = createRequire(join(nodeDir, 'package.json'));
const { default: Provider } = await import(require.resolve('oidc-provider'));

const accounts = () => JSON.parse(readFileSync(accountsFile, 'utf8'));
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    post_logout_redirect_uris: [postLogoutUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  scopes: ['openid', 'email', 'profile', 'carnet'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    carnet: ['org', 'carnet_role'],
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['carnet-test-oidc-cookie-key'] },
  async findAccount(ctx, id) {
    const claims = accounts()[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
