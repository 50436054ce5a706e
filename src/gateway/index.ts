export { main } from './cli.js';
export { type GatewayConfig, GatewayConfigError, resolveConfig } from './config.js';
export { createGateway, type Gateway, type GatewayOptions } from './gateway.js';
export type { GatewayMetrics } from './metrics.js';
export { type OpenedStore, openStore } from './open-store.js';
export { ADMIN_PREFIX } from './operations.js';
export { DEFAULT_ROUTES, type GatewayRoute, parseRoute } from './routes.js';
export { parseStoreUrl, type StoreSpec } from './store-url.js';
