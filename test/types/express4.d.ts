// Express 4 is installed as the alias `express4` next to Express 5; its API is typed as Express's.
declare module 'express4' {
  import express from 'express';
  export default express;
}
