// The dashboard's access to the host: the admin token and the JSON routes.
//
// The token comes from the page URL once (`#token=...` keeps it out of
// server logs; `?token=...` works too), or from the token field, and is
// kept in sessionStorage for this tab only. It is removed from the address
// bar so it does not end up in bookmarks or screenshots.

const STORAGE_KEY = 'vista-dashboard-token';

/** Raised when the host refuses the token (401). */
export class AuthRequired extends Error {}

/** Reads `token` from the URL (hash or query), else from sessionStorage. */
export function initialToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const fromUrl = hash.get('token') ?? query.get('token');
  if (fromUrl !== null) {
    hash.delete('token');
    query.delete('token');
    const rest = (query.toString() ? `?${query}` : '') + (hash.toString() ? `#${hash}` : '');
    history.replaceState(null, '', location.pathname + rest);
    sessionStorage.setItem(STORAGE_KEY, fromUrl);
    return fromUrl;
  }
  return sessionStorage.getItem(STORAGE_KEY) ?? '';
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  setToken(token) {
    this.token = token;
    if (token) sessionStorage.setItem(STORAGE_KEY, token);
    else sessionStorage.removeItem(STORAGE_KEY);
  }

  /** GET a JSON admin route; throws AuthRequired on 401, Error otherwise. */
  async get(path) {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const response = await fetch(path, { headers, cache: 'no-store' });
    const body = await response.json().catch(() => null);
    if (response.status === 401) {
      throw new AuthRequired(body?.message ?? 'the admin token is required');
    }
    if (!response.ok) {
      throw new Error(`${path}: ${response.status} ${body?.message ?? ''}`);
    }
    return body;
  }

  /** The WebSocket URL of this host, with the token as `hs_token`. */
  socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const token = this.token ? `?hs_token=${encodeURIComponent(this.token)}` : '';
    return `${scheme}//${location.host}/${token}`;
  }
}
