// The operator's settings and secrets for this plugin, through the standard
// `wasi:config/store` (`[plugins.config]`, `[plugins.secrets]` in the host's config). Uses the
// world's interfaces (`#wit`): runs only inside the component.

import { configGet, configGetAll } from '#wit';

import { HttpError } from './errors.js';

/** @param {() => any} f */
function read(f) {
  try {
    return f();
  } catch (err) {
    const detail = err?.payload?.val ?? String(err);
    throw HttpError.internal(`reading the plugin's configuration: ${detail}`);
  }
}

export const config = Object.freeze({
  /**
   * The value of `key`, if the operator set one.
   * @param {string} key
   * @returns {string | undefined}
   */
  get(key) {
    return read(() => configGet(key)) ?? undefined;
  },

  /**
   * The value of `key`; a 500 `plugin_misconfigured` naming the key when it is not set.
   * @param {string} key
   * @returns {string}
   */
  require(key) {
    const value = this.get(key);
    if (value === undefined) {
      throw new HttpError(500, 'plugin_misconfigured', `the operator has not set \`${key}\` for this plugin`);
    }
    return value;
  },

  /** Every key and value set for this plugin. @returns {Record<string, string>} */
  all() {
    return Object.fromEntries(read(() => configGetAll()));
  },
});
