// The API key, kept in sessionStorage: it lasts while this tab is open and is never written to
// localStorage, cookies or the URL.

const SLOT = "gif-service.api-key";

export function getKey() {
  return sessionStorage.getItem(SLOT);
}

export function setKey(key) {
  sessionStorage.setItem(SLOT, key);
}

export function forgetKey() {
  sessionStorage.removeItem(SLOT);
}
