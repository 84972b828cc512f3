// js-ipfs 0.66's newer dependencies call Promise.withResolvers, which Node.js 20 lacks
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
